"""The gRPC front door: servicer, auth, validation, status mapping."""
