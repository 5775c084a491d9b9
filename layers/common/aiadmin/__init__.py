"""Shared domain package of AI Admin onboarding: used by every Lambda handler (as a layer)
and by the WhatsApp runner."""
