"""The S3 gateway: every branch of every repo served as an S3 bucket (docs/s3.md)."""
