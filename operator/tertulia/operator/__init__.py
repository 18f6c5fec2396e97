"""The kopf operator that turns a ChatBot resource into its running stack."""
