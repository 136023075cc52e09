"""Generated from proto/ by `python -m contracts.generate`. Do not edit."""
