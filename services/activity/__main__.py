"""`python -m services.activity`: run the activity service."""

from services.activity.app import main

if __name__ == "__main__":
    main()
