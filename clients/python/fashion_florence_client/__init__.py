"""Python client for the Fashion Florence API, and its wire types (schema, protocol, codes).

Depends on httpx and pydantic only: installing it never brings torch.

    from fashion_florence_client import Client, AsyncClient, ServiceCallError
"""

from fashion_florence_client.client import AsyncClient, Client, ImageInput
from fashion_florence_client.exceptions import (
    AuthenticationError,
    ConnectionFailedError,
    InvalidInputError,
    RequestRejectedError,
    ServerError,
    ServiceCallError,
    ServiceUnavailableError,
)
from fashion_florence_client.retry import RetryPolicy

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConnectionFailedError",
    "ImageInput",
    "InvalidInputError",
    "RequestRejectedError",
    "RetryPolicy",
    "ServerError",
    "ServiceCallError",
    "ServiceUnavailableError",
]
