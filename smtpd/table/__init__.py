"""Tables: lists and mappings that smtpd.conf refers to (table(5)).

    from smtpd.table import open_table, Service, TableTempFail
    t = open_table(config.tables["aliases"])
    t.alias("root") -> ("bob", "alice") | None
    t.match(Service.DOMAIN, "example.org") -> bool
"""

from smtpd.table.backend import REGISTRY, Table, TableBackend, open_table
from smtpd.table.match import Credentials, MailAddr, UserInfo
from smtpd.table.service import Service, TableError, TableTempFail

__all__ = [
    "REGISTRY",
    "Credentials",
    "MailAddr",
    "Service",
    "Table",
    "TableBackend",
    "TableError",
    "TableTempFail",
    "UserInfo",
    "open_table",
]
