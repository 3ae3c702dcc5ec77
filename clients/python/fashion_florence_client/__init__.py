"""Python client for the Fashion Florence API, and its wire types (schema, protocol, codes).

Depends on httpx and pydantic only: installing it never brings torch.
"""
