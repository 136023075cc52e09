"""`python -m services.vector`: run the vector service."""

from services.vector.app import main

if __name__ == "__main__":
    main()
