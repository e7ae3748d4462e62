#!/usr/bin/env sh
# Regenerate the Python stubs after editing a .proto (needs grpcio-tools: pip install -e '.[test]').
set -eu
cd "$(dirname "$0")"
python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. tessera/v1/image_generation.proto
