"""`python -m services.canvas`: run one instance (gRPC and its WebSocket endpoint)."""

from services.canvas.app import main

if __name__ == "__main__":
    main()
