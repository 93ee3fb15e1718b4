import IngressService

// ingress: the device API (POST /v1/inquiries, /v1/devices) in front of Veil's pipeline.
await Ingress.runtime.main()
