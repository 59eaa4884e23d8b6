"""Ask a gRPC server's standard health service (grpc.health.v1.Health) whether it is SERVING.

    python grpc_health_check.py                                   # 127.0.0.1:50051, overall health
    python grpc_health_check.py 127.0.0.1:50051 --service moodstream.v1.Screening
    python grpc_health_check.py scoring-host:50051 --tls-ca ca.pem

Exit status 0 when the answer is SERVING, 1 otherwise (NOT_SERVING, unknown
service, unreachable, timeout), with one line on stderr saying which. The
server image runs it as its HEALTHCHECK; Kubernetes uses its native grpc
probe instead, which asks the same service. Needs only grpcio and
grpcio-health-checking, which every moodstream install has.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def check(address: str, service: str = "", timeout: float = 3.0, tls_ca: str | None = None) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()))
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            return False, f"{address}: {error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address} {service or '(overall)'}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051", help="HOST:PORT (default: %(default)s)")
    parser.add_argument("--service", default="", help="service name to ask about ('' = the server as a whole)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default: 3)")
    parser.add_argument("--tls-ca", help="use TLS, trusting this CA certificate (PEM)")
    args = parser.parse_args(argv)
    serving, message = check(args.address, args.service, args.timeout, args.tls_ca)
    print(message, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
