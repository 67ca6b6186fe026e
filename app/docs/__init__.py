"""The OpenAPI document and the pages that show it: Swagger UI, Redoc and Scalar, served from the service."""
