"""Load and traffic generators. They drive the system over HTTP only and import none of its packages."""
