"""Throwaway certificates for a TLS broker on this machine: a CA, a broker certificate for
127.0.0.1 / localhost, and a client certificate, made with the ``openssl`` command.

``Mosquitto(tls=True)`` and ``edgerun broker --tls`` use them, so the tests and a first try of
``mqtts://`` need no certificates of their own. They are valid for 2 days and their keys sit
unencrypted in a temp directory: for a real deployment use your own CA.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgerun.errors import UserError

DAYS = 2
_FILES = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
log = logging.getLogger("edgerun.tls_dev")
_CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class DevCerts:
    """PEM files in one directory."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def dev_certs(folder: Path, host: str = "127.0.0.1") -> DevCerts:
    """The certificates in ``folder``, made there first if it holds none (``make_dev_certs``).

    Reusing them is what lets a broker restart without its clients' URLs going stale. Expired ones
    are used anyway, with a warning: new ones would need the new CA in every client's URL.

    Raises:
        UserError: the folder holds only some of the files, or openssl failed.
    """
    d = Path(folder)
    have = [n for n in _FILES if (d / n).is_file()]
    if not have:
        return make_dev_certs(d, host)
    if len(have) < len(_FILES):
        missing = ", ".join(n for n in _FILES if n not in have)
        raise UserError(f"the TLS certificate folder {d} lacks {missing}: empty it to make new certificates "
                        "(clients then need its new ca.pem) or put the missing files back")
    exe = _openssl()
    for name in ("ca.pem", "server.pem", "client.pem"):
        r = subprocess.run([exe, "x509", "-checkend", "0", "-noout", "-in", str(d / name)], capture_output=True)
        if r.returncode != 0:
            log.warning("%s has expired (or is not a certificate): clients will refuse the broker; delete %s to "
                        "make new certificates (clients then need the new ca.pem)", d / name, d)
            break
    return DevCerts(*(d / n for n in _FILES))


def _openssl() -> str:
    exe = shutil.which("openssl")
    if exe is None:
        raise UserError("the openssl command was not found (TLS test certificates are made with it): "
                        "sudo apt-get install -y openssl")
    return exe


def make_dev_certs(folder: Path, host: str = "127.0.0.1", *, days: int = DAYS) -> DevCerts:
    """Write a CA, a server certificate for ``host`` (and localhost) and a client certificate into ``folder``.

    ``days``: how long they are valid (a negative number makes expired server and client certificates,
    for tests; the CA stays valid a day).

    Raises:
        UserError: the ``openssl`` command is missing or failed (its message is in ours).
    """
    exe = _openssl()
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = d / "ca.pem", d / "ca.key"
    _run(exe, "req", "-x509", *_CURVE, "-keyout", ca_key, "-out", ca, "-days", max(days, 1), "-subj", "/CN=edgerun dev CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-addext", "subjectKeyIdentifier=hash")
    try:
        san = f"IP:{ipaddress.ip_address(host)},DNS:localhost"
    except ValueError:
        san = f"DNS:{host},DNS:localhost"
    server = _signed(exe, d, "server", ca, ca_key, f"subjectAltName={san}\nextendedKeyUsage=serverAuth", days)
    client = _signed(exe, d, "client", ca, ca_key, "extendedKeyUsage=clientAuth", days)
    return DevCerts(ca, server[0], server[1], client[0], client[1])


def _signed(exe: str, d: Path, name: str, ca: Path, ca_key: Path, ext: str, days: int) -> tuple[Path, Path]:
    cert, key, csr, extfile = d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
    extfile.write_text(f"{ext}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _run(exe, "req", *_CURVE, "-keyout", key, "-out", csr, "-subj", f"/CN=edgerun dev {name}")
    _run(exe, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", days, "-extfile", extfile)
    csr.unlink()
    extfile.unlink()
    return cert, key


def _run(*args: object) -> None:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise UserError(f"openssl failed making TLS test certificates ({' '.join(map(str, args[1:3]))}): "
                        f"{r.stderr.strip()[-500:]}")
