"""Providers: the things that actually make videos, behind one small interface (`base.Provider`)."""
