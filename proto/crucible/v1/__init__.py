"""Generated gRPC code for the crucible.v1 API (do not edit; run `make proto`)."""
