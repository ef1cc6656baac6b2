"""AWS clients for the SQS result sink and SSM-held API keys; boto3 is the optional `aws` extra.

Region, endpoint and credentials come from boto3's own environment (`AWS_DEFAULT_REGION`,
`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...), on Modal usually from an attached secret.
"""

from __future__ import annotations

from typing import Any

from modalkit.exceptions import ConfigError

_CREDENTIALS_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on Modal: in an attached secret)"


def client(service: str, yaml_path: str) -> Any:
    """A boto3 client; `yaml_path` is the config key that asked for it, named in every error."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, NoRegionError
    except ImportError:
        raise ConfigError([f"{yaml_path}: needs boto3, which is not installed: pip install 'modalkit[aws]'"]) from None
    try:
        # Short timeouts: a result push is retried by `deliver`, and a web app must not hang at start.
        config = Config(connect_timeout=5, read_timeout=20, retries={"mode": "standard", "max_attempts": 3})
        # A new session each time: the default one caches credentials and region from its first use.
        return boto3.session.Session().client(service, config=config)
    except NoRegionError:
        raise ConfigError(
            [f"{yaml_path}: no AWS region is set: set AWS_DEFAULT_REGION (on Modal: in a secret)"]
        ) from None
    except BotoCoreError as exc:
        raise ConfigError([f"{yaml_path}: cannot create the AWS {service} client: {exc}"]) from None


def ssm_parameter(name: str, yaml_path: str) -> str:
    """The decrypted value of an SSM Parameter Store parameter (String or SecureString)."""
    ssm = client("ssm", yaml_path)  # first: it reports a missing boto3 as a ConfigError
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    region = ssm.meta.region_name
    try:
        return str(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        problem = (
            f"the SSM parameter {name!r} does not exist in region {region}: create it "
            f"(aws ssm put-parameter --type SecureString --name {name} --value ...) or fix the name"
        )
    except NoCredentialsError:
        problem = f"no AWS credentials to read the SSM parameter {name!r}: {_CREDENTIALS_HINT}"
    except ClientError as exc:
        error = exc.response.get("Error", {})
        problem = (
            f"reading the SSM parameter {name!r} in region {region} failed ({error.get('Code')}: "
            f"{error.get('Message')}); the credentials need ssm:GetParameter, and kms:Decrypt for a SecureString"
        )
    except BotoCoreError as exc:
        problem = f"cannot read the SSM parameter {name!r} in region {region}: {exc}"
    raise ConfigError([f"{yaml_path}: {problem}"])
