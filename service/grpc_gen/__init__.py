"""Generated from grpc_predict_v2.proto (KServe) by `make grpc-gen`; do not edit."""
