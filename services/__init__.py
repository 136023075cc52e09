"""The knowledge platform's eight services, their generated API code and the shared runtime kit."""
