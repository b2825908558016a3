"""Throw-away PKI for the webhook tests, made with the openssl CLI (``cryptography`` is not installed).

EC P-256 keys keep generation in the tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVICE_NAMESPACE = "hami-system"
SERVICE_NAME = "hami-scheduler"
SERVICE_DNS = f"{SERVICE_NAME}.{SERVICE_NAMESPACE}.svc"
_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"openssl {' '.join(args)} failed: {done.stderr}"


@dataclass(frozen=True, slots=True)
class Ca:
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def pem(self) -> bytes:
        return self.cert.read_bytes()

    def issue(self, directory: Path, cn: str = SERVICE_DNS) -> tuple[Path, Path]:
        """A serving certificate for the webhook service and 127.0.0.1: ``(tls.crt, tls.key)``."""
        directory.mkdir(parents=True, exist_ok=True)
        _openssl("req", *_EC, "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={cn}", cwd=directory)
        (directory / "ext.cnf").write_text(f"subjectAltName=DNS:{SERVICE_DNS},IP:127.0.0.1\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            str(self.cert),
            "-CAkey",
            str(self.directory / "ca.key"),
            "-CAcreateserial",
            "-out",
            "tls.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            cwd=directory,
        )
        return directory / "tls.crt", directory / "tls.key"


def make_ca(directory: Path, name: str) -> Ca:
    directory.mkdir(parents=True)
    _openssl(
        "req",
        "-x509",
        *_EC,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )
    return Ca(directory)


def der(cert_file: Path) -> bytes:
    """The DER form of a PEM certificate file, to compare with what a server presents."""
    return ssl.PEM_cert_to_DER_cert(cert_file.read_text())


@dataclass
class SecretVolume:
    """Files laid out as kubelet mounts a Secret: ``tls.crt -> ..data/tls.crt``, ``..data -> ..<n>``;
    an update swaps the ``..data`` symlink atomically."""

    root: Path
    version: int = 0

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"

    def publish(self, ca: Ca) -> Path:
        """Issue a new certificate from ``ca`` and swap it in; returns the new cert file."""
        self.version += 1
        target = self.root / f"..v{self.version}"
        cert, _ = ca.issue(target)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        os.replace(tmp, self.root / "..data")
        for name in ("tls.crt", "tls.key"):
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")
        return cert


def hami_webhook_configuration(ca_pem: bytes, *, failure_policy: str = "Ignore") -> dict:
    """The chart's ``MutatingWebhookConfiguration`` (spec §3 "Registration in the chart")."""
    ignore = {"matchExpressions": [{"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]}]}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "hami-webhook"},
        "webhooks": [
            {
                "name": "vgpu.hami.io",
                "clientConfig": {
                    "service": {
                        "namespace": SERVICE_NAMESPACE,
                        "name": SERVICE_NAME,
                        "path": "/webhook",
                        "port": 443,
                    },
                    "caBundle": base64.b64encode(ca_pem).decode(),
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "*",
                    }
                ],
                "failurePolicy": failure_policy,
                "sideEffects": "None",
                "timeoutSeconds": 10,
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "Never",
                "admissionReviewVersions": ["v1beta1"],
                "namespaceSelector": ignore,
                "objectSelector": ignore,
            }
        ],
    }


async def presented_certificate(port: int) -> bytes:
    """The DER certificate the server presents to a fresh connection (no SNI, as for an IP)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(binary_form=True)
        assert certificate is not None
        return certificate
    finally:
        writer.close()
        await writer.wait_closed()
