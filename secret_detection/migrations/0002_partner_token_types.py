"""Seed the partner token types GitLab verifies through SDRS (PartnerTokens::Registry),
under the gitleaks rule ids its secret detection analyzer reports."""

from django.db import migrations

PARTNER_TYPES = [
    ("AWS", "aws"),
    ("GCP API key", "gcp"),
    ("GCP OAuth client secret", "gcp"),
    ("Google (GCP) Service-account", "gcp"),
    ("Postman API token", "postman"),
    ("GitHub Personal Access Token", "github"),
    ("GitHub OAuth Access Token", "github"),
    ("GitHub App Token", "github"),
    ("GitHub Refresh Token", "github"),
]


def seed(apps, schema_editor):
    model = apps.get_model("secret_detection", "PartnerTokenType")
    for token_type, partner in PARTNER_TYPES:
        if not model.objects.filter(token_type__iexact=token_type).exists():
            model.objects.create(token_type=token_type, partner=partner, enabled=True)


def unseed(apps, schema_editor):
    model = apps.get_model("secret_detection", "PartnerTokenType")
    model.objects.filter(token_type__in=[token_type for token_type, _ in PARTNER_TYPES]).delete()


class Migration(migrations.Migration):
    dependencies = [("secret_detection", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
