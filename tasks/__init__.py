"""The four stages of an export (plan, prefetch, infer, write) as plain functions and thin Prefect tasks."""
