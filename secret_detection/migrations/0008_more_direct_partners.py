"""The partners of GitLab's later registry that we verify directly (OpenAI, Anthropic,
SendGrid, Heroku, Stripe): their token types, under the rule ids GitLab's secret detection
reports, so that routing sends them to the partner's API while SDRS is off (0002's pattern:
an existing row of the same rule id, any case, is left as the admin set it)."""

from django.db import migrations, models

PARTNER_TYPES = [
    ("OpenAiProjectKey", "openai"),
    ("OpenAiServiceAccountKey", "openai"),
    ("open ai token", "openai"),
    ("anthropic_key", "anthropic"),
    ("Sendgrid API token", "sendgrid"),
    ("Heroku API Key", "heroku"),
    ("StripeLiveSecretKey", "stripe"),
    ("StripeLiveShortSecretKey", "stripe"),
    ("StripeLiveRestrictedKey", "stripe"),
]


def seed(apps, schema_editor):
    model = apps.get_model("secret_detection", "PartnerTokenType")
    for token_type, partner in PARTNER_TYPES:
        if not model.objects.filter(token_type__iexact=token_type).exists():
            model.objects.create(token_type=token_type, partner=partner, enabled=True)


def unseed(apps, schema_editor):
    model = apps.get_model("secret_detection", "PartnerTokenType")
    for token_type, partner in PARTNER_TYPES:
        model.objects.filter(token_type=token_type, partner=partner).delete()


class Migration(migrations.Migration):
    dependencies = [("secret_detection", "0007_direct_partners")]

    operations = [
        migrations.AlterField(
            model_name="partnertokentype",
            name="partner",
            field=models.CharField(
                choices=[
                    ("aws", "Amazon Web Services"),
                    ("gcp", "Google Cloud"),
                    ("postman", "Postman"),
                    ("github", "GitHub"),
                    ("openai", "OpenAI"),
                    ("anthropic", "Anthropic"),
                    ("sendgrid", "SendGrid"),
                    ("heroku", "Heroku"),
                    ("stripe", "Stripe"),
                ],
                max_length=32,
            ),
        ),
        migrations.RunPython(seed, unseed),
    ]
