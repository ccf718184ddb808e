"""HTTP only: routers, auth, the error envelope, the OpenAI facade and the event streams.
Translates HTTP <-> `core` (query strings into typed values, results into responses); no
business rules."""
