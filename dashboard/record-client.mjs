// Entry point of static/vendor/moodstream-grpc-web.js: the gRPC-web client of the record page,
// generated from proto/moodstream/v1/moodstream.proto by protoc-gen-es, with @connectrpc/connect-web.
export { create } from "@bufbuild/protobuf";
export { Code, ConnectError, createClient } from "@connectrpc/connect";
export { createGrpcWebTransport } from "@connectrpc/connect-web";
export * from "./build/proto/moodstream/v1/moodstream_pb.js";
