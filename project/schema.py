"""How the OpenAPI schema describes our authentication (drf-spectacular extensions).

Imported from ``ProjectConfig.ready`` so the extensions are registered before any schema
is generated.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class AccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "project.authentication.AccessTokenAuthentication"
    name = ["PrivateToken", "BearerToken"]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "apiKey", "in": "header", "name": "PRIVATE-TOKEN", "description": "Personal access token"},
            {"type": "http", "scheme": "bearer", "description": "Personal access token as a bearer token"},
        ]


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "project.authentication.CsrfSessionAuthentication"
    name = "SessionCookie"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid", "description": "Admin session (CSRF on writes)"}
