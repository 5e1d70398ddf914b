"""Generated from service/grpc_gen/grpc_predict_v2.proto (KServe) by `make grpc-gen`; do not
edit. The client's own copy (it never imports the service), in its own descriptor pool."""
