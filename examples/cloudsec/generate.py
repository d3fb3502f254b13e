"""Write the cloud-security triage example domain: findings from scanners, alerts and tickets, by category.

Each row is a finding as an on-call engineer would see it (a scanner line, a cloud
provider alert, a ticket, a chat message) and the category a security team files it
under. Run `python examples/cloudsec/generate.py` to rewrite the three split files;
the output is seeded and stable.

The same findings also make a JSON extraction task, in `examples/cloudsec-extract/`: the answer is the
category and the details the text names (cloud, source, team, environment, region, user, ...), one JSON object
per finding, as an intent with its slots.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

HERE = Path(__file__).parent
EXTRACT_DIR = HERE.parent / "cloudsec-extract"
# Details the extraction answer reports, in this order, when the finding's text names them.
EXTRACTED_SLOTS = ("cloud", "source", "team", "environment", "region", "account", "user", "ip", "cve")
SLOT_NAMES = {"cloud_name": "cloud", "env": "environment"}
SPLITS = {"train": 720, "validation": 120, "test": 160}

REGIONS = {
    "aws": ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2", "ca-central-1", "sa-east-1"],
    "azure": ["westeurope", "eastus2", "northeurope", "uksouth", "centralus", "japaneast"],
    "gcp": ["us-central1", "europe-west4", "asia-northeast1", "us-east4", "europe-west2"],
}
SOURCES = {
    "aws": ["AWS Security Hub", "GuardDuty", "AWS Config", "Inspector", "Prowler", "Macie", "IAM Access Analyzer"],
    "azure": ["Defender for Cloud", "Azure Policy", "Sentinel", "Defender for Storage", "Prowler"],
    "gcp": ["Security Command Center", "Cloud Asset Inventory", "Event Threat Detection", "Prowler", "Forseti"],
}
GENERIC_SOURCES = ["Wiz", "Orca", "Trivy", "Checkov", "tfsec", "Lacework", "Prisma Cloud", "internal scanner"]
TEAMS = [
    "payments",
    "checkout",
    "data-platform",
    "ml-infra",
    "identity",
    "growth",
    "search",
    "billing",
    "mobile-api",
    "warehouse",
]
ENVS = ["prod", "production", "staging", "dev", "sandbox", "qa", "shared-services"]
PEOPLE = [
    "j.smith",
    "a.khan",
    "m.rossi",
    "l.chen",
    "deploy-bot",
    "ci-runner",
    "svc-etl",
    "t.nguyen",
    "r.oliveira",
    "k.müller",
]
COUNTRIES = ["Romania", "Vietnam", "Brazil", "Nigeria", "Russia", "Netherlands", "an unexpected ASN", "a Tor exit node"]


def pick(rng: random.Random, options: list[str]) -> str:
    return rng.choice(options)


def slots(rng: random.Random, cloud: str) -> dict[str, str]:
    team = pick(rng, TEAMS)
    env = pick(rng, ENVS)
    return {
        "region": pick(rng, REGIONS[cloud]),
        "account": {
            "aws": f"{rng.randint(10**11, 10**12 - 1)}",
            "azure": f"sub-{rng.randint(1000, 9999)}-{team}",
            "gcp": f"{team}-{env}-{rng.randint(100, 999)}",
        }[cloud],
        "team": team,
        "env": env,
        "user": pick(rng, PEOPLE),
        "ip": f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "days": str(rng.choice([31, 45, 90, 97, 120, 183, 240, 365, 412])),
        "count": str(rng.randint(3, 4000)),
        "id": f"{rng.randint(0, 16**8 - 1):08x}",
        "country": pick(rng, COUNTRIES),
        "cve": f"CVE-{rng.choice([2021, 2022, 2023, 2024, 2025, 2026])}-{rng.randint(1000, 49999)}",
        "cvss": f"{rng.choice([5.3, 6.1, 7.5, 8.1, 8.8, 9.1, 9.8, 10.0])}",
    }


# Per category and cloud: finding details. Placeholders are filled from slots().
SCENARIOS: dict[str, dict[str, list[str]]] = {
    "identity-access": {
        "aws": [
            'IAM role {team}-{env}-role has a policy granting Action "*" on Resource "*"',
            "root account used to sign in to the console from {ip}; root has no MFA device",
            "IAM user {user} has console access without MFA enabled",
            "access key for IAM user {user} has not been rotated in {days} days",
            'role trust policy for {team}-deployer allows sts:AssumeRole from any AWS account (Principal "*")',
            "IAM user {user} is inactive for {days} days but still has active access keys",
            "managed policy AdministratorAccess attached directly to user {user} in account {account}",
            "password policy for account {account} allows 6-character passwords and no reuse prevention",
            "Lambda execution role {team}-fn-role can iam:PassRole to any role",
            "cross-account role {team}-audit grants s3:* and kms:Decrypt to an external account",
        ],
        "azure": [
            "{count} guest users hold the Owner role on subscription {account}",
            "service principal {team}-sp has Contributor at the subscription scope and a client secret older than {days} days",
            "conditional access policy requiring MFA excludes the group {team}-admins",
            "user {user} has been a permanent Global Administrator for {days} days instead of using PIM",
            "custom role {team}-ops allows Microsoft.Authorization/*/write",
            "legacy authentication (basic auth) still allowed for {count} accounts in the tenant",
        ],
        "gcp": [
            "service account {team}-sa@{account}.iam.gserviceaccount.com has roles/owner on the project",
            "user-managed key for service account {team}-sa is {days} days old",
            "allUsers granted roles/iam.serviceAccountTokenCreator on project {account}",
            "primitive role roles/editor bound to {count} principals in {account}",
            "default compute service account used by {count} VMs with the cloud-platform scope",
            "domain-wide delegation enabled for service account {team}-sync",
        ],
    },
    "network-exposure": {
        "aws": [
            "security group sg-{id} allows inbound TCP 22 from 0.0.0.0/0",
            "security group sg-{id} allows inbound TCP 3389 (RDP) from the internet",
            "RDS instance {team}-{env}-db is publicly accessible and its security group allows 5432 from 0.0.0.0/0",
            "network ACL acl-{id} allows all inbound traffic on all ports",
            "EC2 instance i-{id} in a public subnet exposes port 9200 (Elasticsearch) to ::/0",
            "default security group of VPC vpc-{id} allows unrestricted ingress",
            "internet-facing load balancer {team}-alb forwards port 8080 to an admin console",
            "EKS cluster {team}-{env} API endpoint is public with no CIDR restriction",
            "Redis on port 6379 reachable from 0.0.0.0/0 via sg-{id}",
        ],
        "azure": [
            "NSG {team}-nsg rule allows SSH (22) from Internet to {count} VMs",
            "VM {team}-jump-01 has a public IP and RDP open to any source",
            "AKS cluster {team}-{env} API server has no authorized IP ranges",
            "storage firewall disabled and 'Allow access from all networks' on for {team}{env}sa",
            "SQL server {team}-sql has a firewall rule 0.0.0.0-255.255.255.255",
            "NSG flow shows MongoDB port 27017 open to the internet on {team}-db-vm",
        ],
        "gcp": [
            "firewall rule default-allow-ssh permits 0.0.0.0/0 on tcp:22 in VPC {team}-vpc",
            "firewall rule {team}-allow-all opens all ports to 0.0.0.0/0",
            "Cloud SQL instance {team}-{env} has a public IP with authorized network 0.0.0.0/0",
            "GKE cluster {team}-{env} control plane reachable from any IP (master authorized networks off)",
            "VM {team}-bastion exposes RDP (3389) to the internet",
            "Kubernetes service {team}-metrics of type LoadBalancer exposes port 9090 publicly",
        ],
    },
    "data-exposure": {
        "aws": [
            'S3 bucket {team}-{env}-exports allows public read through its bucket policy (Principal "*")',
            "S3 bucket {team}-backups has Block Public Access disabled and an ACL granting AllUsers READ",
            "EBS snapshot snap-{id} is shared publicly",
            "RDS snapshot {team}-{env}-snap is shared with all AWS accounts",
            "Macie found {count} objects with credit card numbers in publicly readable bucket {team}-uploads",
            "AMI ami-{id} containing the {team} application is public",
            "S3 bucket {team}-logs grants write access to authenticated AWS users (any account)",
        ],
        "azure": [
            "blob container {team}-exports allows anonymous public read access",
            "storage account {team}{env}sa has a SAS token with full permissions that expires in 2099",
            "managed disk snapshot {team}-snap exported with a public SAS URL",
            "Defender for Storage: {count} files with PII in a container with public access level 'container'",
            "Cosmos DB account {team}-cosmos allows access from all networks with a read-write key shared in a wiki",
        ],
        "gcp": [
            "bucket gs://{team}-{env}-exports grants allUsers roles/storage.objectViewer",
            "BigQuery dataset {team}_analytics shared with allAuthenticatedUsers",
            "Cloud Storage bucket {team}-ml-datasets is public and holds {count} customer CSV files",
            "disk image {team}-golden-image is shared with allAuthenticatedUsers",
            "DLP scan found {count} email addresses and phone numbers in public bucket {team}-share",
        ],
    },
    "encryption": {
        "aws": [
            "EBS volume vol-{id} attached to i-{id} is not encrypted",
            "RDS instance {team}-{env}-db has storage encryption disabled",
            "KMS key rotation disabled for customer managed key {team}-cmk",
            "load balancer {team}-alb listener uses the policy ELBSecurityPolicy-TLS-1-0-2015-04",
            "S3 bucket {team}-data has no default encryption and allows unencrypted PUTs",
            "CloudFront distribution for {team}.example.com allows HTTP and uses TLSv1 as minimum protocol",
            "DynamoDB table {team}-sessions uses an AWS owned key instead of a customer managed key as required",
            "SQS queue {team}-events has server-side encryption disabled",
        ],
        "azure": [
            "storage account {team}{env}sa allows TLS 1.0 as minimum version",
            "SQL database {team}-db has transparent data encryption turned off",
            "VM disks of {team}-app-vm are not encrypted with customer managed keys",
            "App Service {team}-web allows HTTP (HTTPS Only is off)",
            "Key Vault key {team}-key has no expiration date and no rotation policy",
        ],
        "gcp": [
            "Cloud SQL instance {team}-{env} does not require SSL for connections",
            "Compute disk {team}-data-disk uses Google-managed keys; CMEK required for {env} data",
            "HTTPS load balancer {team}-lb uses an SSL policy that permits TLS 1.0",
            "KMS key {team}-key rotation period is {days} days (policy requires 90 or less)",
            "Pub/Sub topic {team}-events is not encrypted with a customer managed key",
        ],
    },
    "logging-monitoring": {
        "aws": [
            "CloudTrail is not enabled in region {region}",
            "CloudTrail trail {team}-trail has log file validation disabled",
            "VPC flow logs are disabled for vpc-{id}",
            "S3 server access logging disabled on bucket {team}-{env}-data",
            "GuardDuty is not enabled in region {region} for account {account}",
            "no CloudWatch alarm for root account usage or unauthorized API calls",
            "CloudWatch log group /aws/lambda/{team} has retention of 1 day",
            "AWS Config recorder is stopped in region {region}",
        ],
        "azure": [
            "diagnostic settings not configured for Key Vault {team}-kv",
            "activity log retention is {days} days shorter than the required 365",
            "Defender for Cloud plans are off for subscription {account}",
            "NSG flow logs disabled for {team}-nsg",
            "no alert rule for 'Create or Update Security Group' operations in subscription {account}",
        ],
        "gcp": [
            "Data Access audit logs disabled for Cloud Storage in project {account}",
            "VPC flow logs disabled on subnet {team}-subnet",
            "no log sink exporting audit logs for project {account}",
            "log bucket _Default retention set to 7 days for {account}",
            "no log-based metric or alert for IAM policy changes in {account}",
        ],
    },
    "vulnerable-software": {
        "aws": [
            "Inspector: {cve} (CVSS {cvss}) in openssl on i-{id}; fix available in a newer package",
            "ECR image {team}/api:latest has {count} critical vulnerabilities including {cve}",
            "EC2 instance i-{id} runs an AMI that is {days} days old with unpatched kernel",
            "Lambda function {team}-handler uses the deprecated python3.7 runtime",
            "EKS cluster {team}-{env} runs Kubernetes 1.23, which is out of support",
            "RDS {team}-{env}-db runs PostgreSQL 10, past end of life, minor version auto upgrade off",
        ],
        "azure": [
            "Defender: {count} VMs missing critical OS security updates",
            "container image {team}acr.azurecr.io/web:1.4 contains log4j-core 2.14 ({cve}, CVSS {cvss})",
            "App Service {team}-web runs PHP 7.4 which no longer receives security fixes",
            "AKS node pool {team}-pool uses a node image {days} days old",
        ],
        "gcp": [
            "Container Analysis: {cve} (CVSS {cvss}) in glibc of gcr.io/{account}/{team}-worker",
            "GKE node pool {team}-pool on version 1.24 with auto-upgrade disabled",
            "VM {team}-legacy runs Ubuntu 16.04 (end of standard support)",
            "Cloud Function {team}-fn uses the nodejs12 runtime, deprecated",
        ],
        "any": [
            "Trivy: {cve} ({cvss}) in package requests 2.19.1 in image {team}-api:{id}",
            "dependency scan: lodash 4.17.15 vulnerable to prototype pollution ({cve}) in {team}-frontend",
            "{count} hosts run an OpenSSH version affected by {cve}",
            "Jenkins controller for {team} is on 2.289, affected by {cve} (CVSS {cvss})",
        ],
    },
    "secrets-exposure": {
        "aws": [
            "AWS access key AKIA{id}EXAMPLE found in public GitHub repository {team}-tools",
            "EC2 user data for i-{id} contains a plaintext database password",
            "Lambda {team}-handler has environment variable DB_PASSWORD stored in plaintext",
            "CloudFormation template in bucket {team}-cfn has a hardcoded secret access key",
            "ECS task definition {team}-task passes STRIPE_SECRET_KEY as a plain environment variable",
        ],
        "azure": [
            "storage account key for {team}{env}sa committed to repository {team}-infra",
            "App Service {team}-web app settings contain a SQL connection string with the admin password",
            "service principal client secret printed in pipeline logs of {team}-release",
            "ARM template parameter file contains a plaintext adminPassword",
        ],
        "gcp": [
            "service account JSON key for {team}-sa found in a public bucket",
            "Cloud Build log for {team}-deploy prints the value of API_TOKEN",
            "Cloud Run service {team}-svc sets SECRET_KEY directly in env instead of Secret Manager",
            "private key file id_rsa in the container image gcr.io/{account}/{team}-job",
        ],
        "any": [
            "gitleaks: Slack webhook URL committed in {team}-bot/config.yaml",
            "GitHub personal access token found in a Terraform state file for {team}",
            "Kubernetes Secret {team}-db is mounted but also copied into a ConfigMap in plaintext",
            "detect-secrets: private key block found in {team}-infra/scripts/deploy.sh",
        ],
    },
    "threat-activity": {
        "aws": [
            "GuardDuty: CryptoCurrency:EC2/BitcoinTool.B!DNS, instance i-{id} querying mining pool domains",
            "GuardDuty: UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration, credentials of i-{id} used from {ip}",
            "console login for {user} from {country} minutes after a login from the office (impossible travel)",
            "{count} failed ConsoleLogin attempts for {user} from {ip} in 10 minutes",
            "GuardDuty: Recon:EC2/PortProbeUnprotectedPort, i-{id} probed by known scanner {ip}",
            "CloudTrail: DeleteTrail and StopLogging called by {user} at 03:12 UTC from {ip}",
            "EC2 instance i-{id} is sending outbound traffic to a known command-and-control server",
        ],
        "azure": [
            "Sentinel: {count} failed sign-ins followed by a success for {user} from {country}",
            "Defender: suspicious PowerShell execution on VM {team}-app-vm downloading from {ip}",
            "anomalous token usage: {user} signed in from {country} via a Tor IP",
            "Defender for Storage: unusual mass download of {count} blobs from {team}{env}sa by an unfamiliar IP",
        ],
        "gcp": [
            "Event Threat Detection: cryptomining, VM {team}-worker-3 connecting to a mining pool",
            "Event Threat Detection: service account {team}-sa used from {country} for the first time",
            "unusual spike: {count} VMs created in {region} by {user} outside business hours",
            "Event Threat Detection: outgoing DoS traffic from instance {team}-edge-1",
        ],
    },
}

WRAPPERS = [
    "[{source}] {detail}",
    "{source} finding ({cloud_name}, {region}): {detail}",
    "{source}: {detail}. Account {account}, env={env}.",
    "Alert from {source} - {detail} (owner: {team})",
    "Ticket SEC-{ticket}: {detail}. Reported by {source}.",
    "{detail} — flagged by {source} in {region}",
    "hey, {source} just flagged this in {env}: {detail}. can someone take a look?",
    "{cloud_name} / {account}: {detail}",
    "Daily scan summary, {team}: {detail}",
    "{source} HIGH: {detail}",
    "New finding on {team} ({env}): {detail}. First seen today.",
    "policy violation ({source}): {detail}",
]
CLOUD_NAMES = {"aws": "AWS", "azure": "Azure", "gcp": "GCP"}


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def make_finding(rng: random.Random, category: str) -> tuple[str, dict[str, str]]:
    """The finding's text, and the details it names (for the extraction task)."""
    scenarios = SCENARIOS[category]
    clouds = [cloud for cloud in ("aws", "azure", "gcp") if cloud in scenarios]
    cloud = rng.choice(clouds)
    pool = scenarios[cloud] + scenarios.get("any", [])
    values = slots(rng, cloud)
    scenario = rng.choice(pool)
    detail = scenario.format(**values)
    source = rng.choice(SOURCES[cloud] + GENERIC_SOURCES)
    wrapper = rng.choice(WRAPPERS)
    filled = {"source": source, "cloud_name": CLOUD_NAMES[cloud], **values}
    text = wrapper.format(detail=detail, ticket=rng.randint(100, 9999), **filled)
    named = placeholders(scenario) | placeholders(wrapper)
    details = {SLOT_NAMES.get(name, name): filled[name] for name in named if name in filled}
    return text, {slot: details[slot] for slot in EXTRACTED_SLOTS if slot in details}


def generate(seed: int = 7) -> dict[str, list[dict[str, str]]]:
    """Balanced splits with no text shared between them; each row carries its extraction answer as `details`."""
    rng = random.Random(seed)
    categories = sorted(SCENARIOS)
    seen: set[str] = set()
    splits: dict[str, list[dict[str, str]]] = {}
    for split, size in SPLITS.items():
        rows = []
        while len(rows) < size:
            category = categories[len(rows) % len(categories)]
            text, details = make_finding(rng, category)
            if text in seen:
                continue
            seen.add(text)
            rows.append({"text": text, "label": category, "details": details})
        rng.shuffle(rows)
        splits[split] = rows
    return splits


def extraction_row(row: dict) -> dict[str, str]:
    answer = {"category": row["label"], "details": row["details"]}
    return {"prompt": row["text"], "completion": json.dumps(answer, ensure_ascii=False)}


# The triage handbook: what each category covers, for the retrieval rungs of `niche ladder`.
CATEGORY_GUIDES = {
    "data-exposure": "Data that can be read by people who should not see it: public storage buckets and blobs, "
    "shared snapshots and backups, databases or search clusters reachable without authentication, sensitive data "
    "found by classifiers in places open to the internet. File it here when the problem is who can read the data.",
    "encryption": "Data at rest or in transit that is not protected by encryption, or protected badly: unencrypted "
    "volumes, buckets, databases and queues, disabled TLS or old TLS versions, keys without rotation, customer-managed "
    "keys that are missing or scheduled for deletion. File it here when the problem is how the data is protected.",
    "identity-access": "Who can do what: over-broad IAM roles and policies, missing MFA, old or unused access keys, "
    "privileged users and service accounts, trust policies open to other accounts, weak password policies. File it "
    "here when the problem is a permission or an identity.",
    "logging-monitoring": "Blind spots: audit logs, flow logs or access logs switched off, log retention too short, "
    "alerts and detectors disabled, trails that do not cover every region. File it here when the problem is that an "
    "attack would not be seen.",
    "network-exposure": "Services reachable from networks that should not reach them: security groups and firewall "
    "rules open to 0.0.0.0/0, public IPs on databases and admin ports (SSH, RDP), open load balancers, missing "
    "private endpoints. File it here when the problem is a network path.",
    "secrets-exposure": "Credentials where they do not belong: keys, tokens and passwords in source code, container "
    "images, environment variables, logs or chat; secrets committed to repositories. File it here when a secret "
    "has leaked and must be rotated.",
    "threat-activity": "Signs of an attacker or malware at work: logins from unusual countries or Tor, crypto mining, "
    "port scans and brute force, calls to known malicious IPs, anomalous API activity. File it here when something "
    "is happening now, not when a setting is wrong.",
    "vulnerable-software": "Known weaknesses in software versions: CVEs in images, packages and operating systems, "
    "unpatched hosts, end-of-life runtimes, outdated managed engines. File it here when the fix is an upgrade or a "
    "patch.",
}
GENERIC_SLOTS = {
    "account": "the account", "team": "the team", "user": "a user", "days": "many", "ip": "an external IP",
    "env": "an environment", "region": "a region", "country": "an unusual country", "count": "several",
    "id": "0a1b2c3d", "cvss": "high", "cve": "a recent CVE",
}  # fmt: skip


def write_handbook(directory: Path) -> None:
    """One markdown page per category: what belongs there and typical findings, written as generic patterns."""
    directory.mkdir(exist_ok=True)
    for category, scenarios in SCENARIOS.items():
        lines = [f"# {category}", "", CATEGORY_GUIDES[category], "", "## Typical findings", ""]
        for cloud, templates in scenarios.items():
            # Each line names its category, so any passage cut from the page still says where its findings go.
            where = CLOUD_NAMES.get(cloud, "any cloud")
            lines += [f"- {category} ({where}): {template.format(**GENERIC_SLOTS)}" for template in templates]
        (directory / f"{category}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    EXTRACT_DIR.mkdir(exist_ok=True)
    for split, rows in generate().items():
        write_rows(HERE / f"{split}.jsonl", [{"text": row["text"], "label": row["label"]} for row in rows])
        write_rows(EXTRACT_DIR / f"{split}.jsonl", [extraction_row(row) for row in rows])
    write_handbook(HERE / "handbook")
    print(f"wrote the triage handbook to {HERE / 'handbook'}")


if __name__ == "__main__":
    main()
