from __future__ import annotations

from django import forms

from project import crypto
from project.models import AccessToken, ApplicationSetting, User

WRITE_ONLY = ("sdrs_jwt_signing_key", "sdrs_callback_secret")


class AccessTokenCreateForm(forms.ModelForm):
    """Only collects the input: the admin creates the token through the service, which
    generates the value (never through this form's save)."""

    user = forms.ModelChoiceField(queryset=User.objects.filter(is_active=True).order_by("username"))
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in AccessToken.SCOPES], widget=forms.CheckboxSelectMultiple
    )
    expires_at = forms.DateField(required=False, help_text="YYYY-MM-DD; empty for no expiry.")

    class Meta:
        model = AccessToken
        fields = ["user", "name", "scopes", "expires_at"]


class ApplicationSettingForm(forms.ModelForm):
    """Secrets are write-only: the form never shows them, and a blank field keeps the
    stored value. Tick "clear" to remove one.

    A field the environment fixes (``ApplicationSetting.set_by_environment()``) is not in
    the form at all, so a posted value for it is ignored; the admin shows it read-only."""

    sdrs_jwt_signing_key = forms.CharField(
        label="SDRS JWT signing key",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "unchanged (write-only)", "autocomplete": "off"}),
        help_text="RSA private key in PEM form. Leave empty to keep the current key.",
    )
    sdrs_callback_secret = forms.CharField(
        label="SDRS callback secret",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"placeholder": "unchanged (write-only)"}),
        help_text="Leave empty to keep the current secret.",
    )
    clear_sdrs_jwt_signing_key = forms.BooleanField(label="Clear the signing key", required=False)
    clear_sdrs_callback_secret = forms.BooleanField(label="Clear the callback secret", required=False)

    class Meta:
        model = ApplicationSetting
        fields = [
            "project_export_enabled",
            "project_export_limit",
            "project_download_export_limit",
            "max_export_size",
            "max_import_size",
            "max_decompressed_archive_size",
            "catalog_sync_enabled",
            "sdrs_enabled",
            "sdrs_url",
            "sdrs_timeout",
        ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in ApplicationSetting.set_by_environment():
            self.fields.pop(name, None)
            self.fields.pop(f"clear_{name}", None)
        if "sdrs_enabled" in self.fields:
            self.fields["sdrs_enabled"].help_text = (
                "A runtime switch, owned here and on the job console. SDRS_ENABLED in the environment "
                "only gives its value when the settings are first created."
            )
        for name in WRITE_ONLY:
            if name not in self.fields:
                continue
            stored = bool(getattr(self.instance, name, ""))
            self.fields[name].help_text += " A value is stored." if stored else " No value is stored."
            self.initial[name] = ""

    def clean_sdrs_jwt_signing_key(self) -> str:
        value = self.cleaned_data["sdrs_jwt_signing_key"].strip()
        if not value:
            return value
        try:
            crypto.rsa_private_key_load(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        return value + "\n"

    def save(self, commit: bool = True) -> ApplicationSetting:
        instance = super().save(commit=False)
        stored = ApplicationSetting.objects.filter(pk=instance.pk).first()
        for name in WRITE_ONLY:
            if self.cleaned_data.get(f"clear_{name}"):
                setattr(instance, name, "")
            elif self.cleaned_data.get(name):
                setattr(instance, name, self.cleaned_data[name])
            elif stored is not None:
                setattr(instance, name, getattr(stored, name))
        if commit:
            instance.save()
        return instance
