//! `#[require_permission(resource = "...", action = "...")]`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ItemFn, Lit, LitStr, MetaNameValue, ReturnType, Token, Type};

const KEYS: &str = "`resource`, `action`";

/// The checked arguments of the attribute.
pub(crate) struct Args {
    pub(crate) resource: LitStr,
    pub(crate) action: LitStr,
}

pub(crate) fn parse_args(attr: TokenStream) -> syn::Result<Args> {
    let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr.clone())?;
    let mut resource: Option<LitStr> = None;
    let mut action: Option<LitStr> = None;
    for pair in pairs {
        let Some(key) = pair.path.get_ident() else {
            return Err(syn::Error::new(pair.path.span(), format!("unknown argument; expected one of {KEYS}")));
        };
        let slot = match key.to_string().as_str() {
            "resource" => &mut resource,
            "action" => &mut action,
            other => {
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown argument `{other}`; expected one of {KEYS}"),
                ));
            }
        };
        if slot.is_some() {
            return Err(syn::Error::new(key.span(), format!("duplicate argument `{key}`")));
        }
        let value = match &pair.value {
            Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => s.clone(),
            other => {
                return Err(syn::Error::new(other.span(), format!("`{key}` takes a string literal")));
            }
        };
        if value.value().trim().is_empty() {
            return Err(syn::Error::new(value.span(), format!("`{key}` must not be empty")));
        }
        *slot = Some(value);
    }
    let span = if attr.is_empty() { Span::call_site() } else { attr.span() };
    match (resource, action) {
        (Some(resource), Some(action)) => Ok(Args { resource, action }),
        (None, _) => Err(syn::Error::new(span, "missing argument `resource = \"...\"`")),
        (_, None) => Err(syn::Error::new(span, "missing argument `action = \"...\"`")),
    }
}

fn returns_result(output: &ReturnType) -> bool {
    match output {
        ReturnType::Type(_, ty) => match ty.as_ref() {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident.to_string().ends_with("Result")),
            _ => false,
        },
        ReturnType::Default => false,
    }
}

/// Expand, or return the error to report.
pub(crate) fn try_expand(attr: TokenStream, function: &ItemFn) -> syn::Result<TokenStream> {
    let args = parse_args(attr)?;
    if function.sig.asyncness.is_none() {
        return Err(syn::Error::new(
            function.sig.fn_token.span(),
            "#[require_permission] needs an `async fn`: the policy check is awaited before the body",
        ));
    }
    if !returns_result(&function.sig.output) {
        let span = match &function.sig.output {
            ReturnType::Type(_, ty) => ty.span(),
            ReturnType::Default => function.sig.paren_token.span.close(),
        };
        return Err(syn::Error::new(
            span,
            "#[require_permission] needs a return type `Result<_, E>` where `E: From<rmcp::ErrorData>`, \
             so a denial can be returned",
        ));
    }
    let Args { resource, action } = args;
    let check = quote_spanned! {resource.span()=>
        ::rmcp_guard::policy::require_permission(#resource, #action, ::core::option::Option::None).await?;
    };
    // Only the body changes: attributes, visibility, modifiers and the
    // signature rmcp's `#[tool_router]` sees stay exactly as written.
    let block = &function.block;
    let mut out = function.clone();
    out.block = Box::new(syn::parse_quote!({ #check #block }));
    Ok(quote!(#out))
}

/// The entry point: on error, the original item is emitted with the error so
/// IDEs and the rest of the crate keep working.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "#[require_permission] goes on an `async fn` tool method",
            )
            .to_compile_error();
            return quote! { #item #error };
        }
    };
    match try_expand(attr, &function) {
        Ok(tokens) => tokens,
        Err(error) => {
            let error = error.to_compile_error();
            quote! { #function #error }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(attr: &str, item: &str) -> String {
        expand(attr.parse().unwrap(), item.parse().unwrap()).to_string()
    }

    #[test]
    fn check_comes_before_the_body_and_the_signature_is_kept() {
        let out = expand_str(
            r#"resource = "catalyst-center", action = "write""#,
            "#[doc = \"x\"] pub async fn deploy(&self, Parameters(a): Parameters<A>) -> Result<String, ErrorData> { body(a) }",
        );
        let expected = quote! {
            #[doc = "x"]
            pub async fn deploy(&self, Parameters(a): Parameters<A>) -> Result<String, ErrorData> {
                ::rmcp_guard::policy::require_permission("catalyst-center", "write", ::core::option::Option::None).await?;
                { body(a) }
            }
        }
        .to_string();
        assert_eq!(out, expected);
    }

    #[test]
    fn misuse_is_reported() {
        let f: ItemFn = syn::parse_str("async fn t(&self) -> Result<(), E> {}").unwrap();
        let err = |attr: &str| try_expand(attr.parse().unwrap(), &f).unwrap_err().to_string();
        assert_eq!(err(r#"resource = "a""#), "missing argument `action = \"...\"`");
        assert_eq!(err(r#"action = "a""#), "missing argument `resource = \"...\"`");
        assert!(err(r#"resource = "a", action = "b", scope = "c""#).starts_with("unknown argument `scope`"));
        assert_eq!(err(r#"resource = "a", resource = "b", action = "c""#), "duplicate argument `resource`");
        assert_eq!(err(r#"resource = a, action = "c""#), "`resource` takes a string literal");
        assert_eq!(err(r#"resource = "", action = "c""#), "`resource` must not be empty");
        let sync: ItemFn = syn::parse_str("fn t(&self) -> Result<(), E> {}").unwrap();
        assert!(try_expand(r#"resource = "a", action = "b""#.parse().unwrap(), &sync).is_err());
        let plain: ItemFn = syn::parse_str("async fn t(&self) -> String { todo() }").unwrap();
        assert!(try_expand(r#"resource = "a", action = "b""#.parse().unwrap(), &plain).is_err());
    }
}
