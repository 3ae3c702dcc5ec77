"""Image intake: fetch bytes from a URL and decode untrusted bytes into RGB images."""

from service.intake.decode import decode_image
from service.intake.fetch import ImageFetcher, fetcher_from_settings
from service.intake.worker import run_with_budget

__all__ = ["ImageFetcher", "decode_image", "fetcher_from_settings", "run_with_budget"]
