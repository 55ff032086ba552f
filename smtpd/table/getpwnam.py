"""getpwnam: system users (upstream table_getpwnam.c, K_USERINFO only)."""

from __future__ import annotations

import pwd

from smtpd.table.service import Service, TableError


class GetpwnamBackend:
    services = Service.USERINFO

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def update(self) -> None:
        pass

    def lookup(self, service: Service, key: str) -> str | None:
        if service is not Service.USERINFO:
            raise TableError(f"getpwnam table cannot answer {service.name} lookups")
        try:
            pw = pwd.getpwnam(key)
        except KeyError:
            return None
        return f"{pw.pw_uid}:{pw.pw_gid}:{pw.pw_dir}"

    def check(self, service: Service, key: str) -> bool:
        return self.lookup(service, key) is not None

    def fetch(self, service: Service) -> tuple[str, ...]:
        raise TableError("getpwnam table cannot be fetched")
