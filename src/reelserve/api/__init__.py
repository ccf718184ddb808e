"""HTTP only: routers, auth, the error envelope. Translates HTTP <-> service; no business rules."""
