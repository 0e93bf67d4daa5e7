"""Generated gRPC code for the brinell.v1 API (do not edit; run `make proto`)."""
