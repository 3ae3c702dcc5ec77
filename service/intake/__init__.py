"""Image intake: fetch bytes from a URL and decode untrusted bytes into RGB images."""

from service.intake.decode import decode_image
from service.intake.fetch import ImageFetcher, fetcher_from_settings

__all__ = ["ImageFetcher", "decode_image", "fetcher_from_settings"]
