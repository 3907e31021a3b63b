"""The four stages of an export (plan, prefetch, infer, write): plain functions, thin tasks."""
