"""The gRPC front door (servicer, auth) and what the HTTP one shares: the service, validation, status mapping."""
