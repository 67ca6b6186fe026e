"""The HTTP layer every controller shares: errors as problem details, CORS, rate limits, media types, DTOs."""
