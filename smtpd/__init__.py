"""pysmtpd: a privilege-separated mail transfer agent in the shape of OpenSMTPD."""

__version__ = "0.1.0"
