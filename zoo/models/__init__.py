"""Model pieces shared by several families (declared once, used by each family that has them):
the SD VAE components, the Wan VAE chunk graphs and their host loop, the Wan text / image
encoders and the Wan DiT pieces. Imports the contract and the infrastructure, never a family."""
