"""Generated protobuf code (scripts/gen_proto.sh). Do not edit."""
