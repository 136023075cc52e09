"""The OTLP receiver: OTLP/gRPC and OTLP/HTTP in, the OTel ClickHouse exporter's schema out."""
