"""`python -m services.chat`: run the service (gRPC and its WebSocket endpoint)."""

from services.chat.app import main

if __name__ == "__main__":
    main()
