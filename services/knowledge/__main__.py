"""`python -m services.knowledge`: run the service."""

from services.knowledge.app import main

if __name__ == "__main__":
    main()
