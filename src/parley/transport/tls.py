"""TLS built in: one server-side `ssl.SSLContext` from a certificate chain and key in PEM
files, and its reload (SIGHUP) without a restart.

`TlsCertificate.reload` loads the files into the same context: connections made after it
present the new certificate, connections already open keep theirs. A reload that fails
(a missing file, a key that does not match) keeps the certificate in use and says why.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from parley.errors import CannotStart


class TlsCertificate:
    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        # TLS 1.2 and later, the standard library's server defaults (ciphers, no compression).
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            self._load(self.context)
        except (OSError, ssl.SSLError) as exc:
            raise CannotStart(f"cannot load the TLS certificate: {exc}") from exc

    def _load(self, context: ssl.SSLContext) -> None:
        for path in (self.cert_file, self.key_file):
            if not path.is_file():
                raise OSError(f"{path} is not a file")
        context.load_cert_chain(self.cert_file, self.key_file)

    def reload(self) -> str | None:
        """Load the files again; None once done, or why the old certificate stays."""
        try:
            # Checked on a scratch context first: load_cert_chain on the live one could leave
            # it with a new certificate and the old key if the pair does not match.
            self._load(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
            self._load(self.context)
        except (OSError, ssl.SSLError) as exc:
            return str(exc)
        return None
