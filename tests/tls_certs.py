"""A throwaway certificate authority and a server certificate it signed, made with openssl, for
the TLS tests (PostgreSQL with ssl=on, aiosmtpd with STARTTLS)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Certs:
    ca: Path  # what a client trusts (sslrootcert, SSL_CERT_FILE)
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(folder: Path, ips: list[str], name: str = "test") -> Certs:
    """A CA and a server certificate for `ips` (subjectAltName IP entries), EC keys (fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt", "-days", "2",
             "-subj", f"/CN=pgkeeper {name} test CA", cwd=folder)
    _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={ips[0]}", cwd=folder)
    (folder / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\nsubjectAltName=" + ",".join(f"IP:{ip}" for ip in ips) + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.crt", "-CAkey", f"{name}-ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    (folder / f"{name}.key").chmod(0o600)
    return Certs(ca=folder / f"{name}-ca.crt", cert=folder / f"{name}.crt", key=folder / f"{name}.key")
