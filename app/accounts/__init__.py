"""Users, login sessions and the authentication flow."""
