"""The canvas service: node positions on each space's canvas, and live collaboration on it
across instances (see canvas.proto)."""

VERSION = "1.0.0"
