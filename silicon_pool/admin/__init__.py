"""The web admin: login, JSON API and pages."""
