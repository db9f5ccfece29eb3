"""What serving and replay both need to score and to log: model refs and loading
(`config`, `servables`), the servables, and the slate policies with the one `marginals`
(`exploration`) that the impression logger, the replay tool and the simulator all call; the
z-score fusion of the stages' scores (`fusion`, the cascade's final order).

Depends on `recstream`, `models` and `features` only; `pipelines` and `services` both import it.
"""
