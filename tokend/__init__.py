"""tokend keeps OAuth2 access tokens fresh and publishes them where consumers read them."""

__version__ = "0.1.0"
