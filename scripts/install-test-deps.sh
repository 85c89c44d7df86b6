#!/usr/bin/env bash
# Installs the real Kafka clients the interop tests drive: kcat (Debian) and, in .venv-test/,
# kafka-python and confluent-kafka from PyPI (plus kafka-python's codec libraries).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kcat >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kcat >/dev/null
fi

if [ ! -x .venv-test/bin/python ]; then
  python3 -m venv .venv-test
fi
.venv-test/bin/pip install -q --disable-pip-version-check \
  kafka-python confluent-kafka python-snappy lz4 zstandard
echo "test clients: $(kcat -V 2>&1 | head -n1); $(.venv-test/bin/python -c 'import confluent_kafka, kafka; print("confluent-kafka", confluent_kafka.__version__, "kafka-python", kafka.__version__)')"
